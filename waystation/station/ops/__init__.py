"""Each operation once: the socket API's handlers and the command line's direct mode call these."""
