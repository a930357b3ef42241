"""One function per registry command or event, taking its dependencies as parameters."""
