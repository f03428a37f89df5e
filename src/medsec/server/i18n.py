"""Portal languages: gettext catalogs read from the ``.po`` sources, locale choice, date formatting.

The catalogs are compiled in memory when the app starts, so a checkout needs no ``pybabel compile``
step. To refresh them after changing a template or a ``N_()`` string, see ``locale/README``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from io import BytesIO
from pathlib import Path

from babel import Locale
from babel.dates import format_datetime, format_timedelta
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from babel.support import Translations

from medsec.errors import ConfigError

logger = logging.getLogger(__name__)

LOCALE_DIR = Path(__file__).parent / "locale"
DOMAIN = "messages"
SUPPORTED: tuple[str, ...] = ("en", "ja")
DEFAULT = "en"
LANG_COOKIE = "medsec_lang"
# An Accept-Language header is short; anything longer is not worth parsing.
MAX_ACCEPT_LANGUAGE = 512
MAX_LANGUAGE_RANGES = 32


def N_(message: str) -> str:
    """Mark a string for extraction; it is translated where it is shown."""
    return message


def load_catalog(po_path: Path, locale: str) -> Translations:
    """Read one ``.po`` file and turn it into gettext translations (compiled in memory)."""
    try:
        with po_path.open("rb") as f:
            catalog = read_po(f, locale=locale, domain=DOMAIN)
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot read the {locale} portal catalog {po_path}: {e}") from e
    compiled = BytesIO()
    write_mo(compiled, catalog)
    compiled.seek(0)
    return Translations(fp=compiled, domain=DOMAIN)


def load_catalogs(locale_dir: Path = LOCALE_DIR) -> dict[str, Translations]:
    """Translations for every supported language, keyed by language code.

    Each language has ``messages.po`` plus one ``.po`` file per portal area (``updates.po``,
    ``vulns.po``...), merged into one catalog so templates use a single gettext.
    """
    catalogs: dict[str, Translations] = {}
    for code in SUPPORTED:
        folder = locale_dir / code / "LC_MESSAGES"
        merged = load_catalog(folder / f"{DOMAIN}.po", code)
        for extra in sorted(folder.glob("*.po")):
            if extra.name != f"{DOMAIN}.po":
                merged.merge(load_catalog(extra, code))
        catalogs[code] = merged
    return catalogs


def supported(code: str | None) -> str | None:
    """``code`` if the portal speaks it, else None."""
    if code is None:
        return None
    code = code.strip().lower()
    return code if code in SUPPORTED else None


def parse_accept_language(header: str) -> list[str]:
    """Language ranges of an ``Accept-Language`` header, best first (RFC 9110 12.5.4)."""
    ranges: list[tuple[float, int, str]] = []
    for position, item in enumerate(header[:MAX_ACCEPT_LANGUAGE].split(",")[:MAX_LANGUAGE_RANGES]):
        tag, _, params = item.strip().partition(";")
        tag = tag.strip()
        if not tag or tag == "*":
            continue
        quality = 1.0
        params = params.strip()
        if params.startswith("q="):
            try:
                quality = float(params[2:])
            except ValueError:
                continue
        if quality <= 0:
            continue
        ranges.append((-quality, position, tag))
    return [tag for _q, _pos, tag in sorted(ranges)]


def negotiate(accept_language: str | None) -> str | None:
    """The supported language that best fits an ``Accept-Language`` header, or None."""
    if not accept_language:
        return None
    preferred = parse_accept_language(accept_language)
    found = Locale.negotiate(preferred, list(SUPPORTED), sep="-")
    return found.language if found is not None else None


def choose_language(cookie: str | None, user_locale: str | None, accept_language: str | None) -> str:
    """The switch's cookie wins, then the user's saved preference, then the browser's."""
    return supported(cookie) or supported(user_locale) or negotiate(accept_language) or DEFAULT


@dataclass(frozen=True)
class DateFormatter:
    """Locale-aware timestamps in the server's display time zone, always followed by the zone's abbreviation
    (``2025/04/01 18:30:05 JST``), so staff at different sites and the manufacturer know which clock they read.

    The default zone is UTC; the API and every exported document stay in UTC whatever the portal shows.
    """

    language: str
    zone: tzinfo = UTC

    def timestamp(self, value: datetime | None) -> str:
        if value is None:
            return ""
        local = value.astimezone(self.zone)
        shown = format_datetime(local, format="medium", tzinfo=self.zone, locale=self.language)
        return f"{shown} {local.tzname() or self.zone}"

    def ago(self, value: datetime | None, now: datetime | None = None) -> str:
        if value is None:
            return ""
        delta = value - (now or datetime.now(UTC))
        return format_timedelta(delta, add_direction=True, locale=self.language)
