"""One function per trainer command or event, taking its dependencies as parameters."""
