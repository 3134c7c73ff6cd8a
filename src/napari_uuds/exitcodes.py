"""Exit codes of the ``napari-uuds`` command line (one home, read by cli.py and commands.py)."""
#: bad input, refused options, an unwritable folder: one line on stderr names the file and the problem
EXIT_USER_ERROR = 2
#: Ctrl-C or SIGTERM: what was learnt is saved, and the message says how to resume
EXIT_INTERRUPTED = 130
