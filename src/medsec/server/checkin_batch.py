"""Group commit for device check-ins.

Each signed report is verified and recorded in its own SAVEPOINT, many reports
share one transaction, and every answer is sent only after that transaction
committed, so an acknowledged check-in is durable and a refused one left no
trace (its refusal is audited separately, as for any request). One writer
thread per server process: on SQLite that removes the lock convoy of many
writers; on PostgreSQL it turns N commits (N WAL flushes) into one. The
batch's audit entries are queued and written together at that commit, under
one audit head lock taken last (ADR 0007); a refused report's savepoint
rollback drops its queued entries.
"""

from __future__ import annotations

import logging
import queue
import threading
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from sqlalchemy.exc import DBAPIError

from medsec.protocol import CheckinResponse, SignedVersionReport
from medsec.server.services import devices

if TYPE_CHECKING:
    from medsec.server.context import ServerContext

logger = logging.getLogger(__name__)

_STOP = object()


class CheckinBatcher:
    def __init__(self, ctx: ServerContext, max_batch: int = 64) -> None:
        self._ctx = ctx
        self._max_batch = max(1, max_batch)
        self._queue: queue.Queue[Any] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="checkin-batcher", daemon=True)
        self._thread.start()

    def submit(self, payload: SignedVersionReport, timeout: float = 30.0) -> CheckinResponse:
        """Verify and record one report; block until its batch committed; raise its refusal if refused."""
        future: Future[CheckinResponse] = Future()
        self._queue.put((payload, future))
        return future.result(timeout)

    def close(self) -> None:
        self._queue.put(_STOP)
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is _STOP:
                return
            batch = [first]
            while len(batch) < self._max_batch:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    self._queue.put(_STOP)
                    break
                batch.append(item)
            self._process(batch)

    def _commit(self, payloads: list[SignedVersionReport]) -> list[CheckinResponse | BaseException]:
        """Record ``payloads`` in one transaction; a report's own refusal is its result, not the batch's."""
        ctx = self._ctx
        results: list[CheckinResponse | BaseException] = []
        with ctx.tx() as session:
            for payload in payloads:
                try:
                    with session.begin_nested():
                        results.append(
                            devices.checkin(
                                session,
                                ctx.audit,
                                ctx.witness,
                                payload,
                                checkin_interval_seconds=ctx.settings.checkin_interval_seconds,
                            )
                        )
                except DBAPIError:
                    raise  # the transaction is gone; the caller retries report by report
                except Exception as e:
                    results.append(e)
        return results

    def _process(self, batch: list[tuple[SignedVersionReport, Future[CheckinResponse]]]) -> None:
        try:
            results = self._commit([payload for payload, _future in batch])
        except DBAPIError:
            # A database error (a deadlock, a lost connection) aborts the whole transaction, so the
            # reports that were fine would fail with it; nothing of the batch was kept: give each
            # report its own transaction instead.
            logger.warning("check-in batch of %d failed; retrying each report alone", len(batch), exc_info=True)
            results = []
            for payload, _future in batch:
                try:
                    results.extend(self._commit([payload]))
                except Exception as e:
                    results.append(e)
        except Exception as e:
            logger.exception("check-in batch of %d failed to commit", len(batch))
            results = [e] * len(batch)
        for (_payload, future), result in zip(batch, results, strict=True):
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)
