"""One function per splitter command or event, taking its dependencies as parameters."""
