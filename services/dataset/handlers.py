"""One function per dataset command or event, taking its dependencies as parameters."""
