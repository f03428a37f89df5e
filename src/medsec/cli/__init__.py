"""The ``medsec`` command line: thin commands over the library."""
