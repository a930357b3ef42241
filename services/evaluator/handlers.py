"""One function per evaluator command or event, taking its dependencies as parameters."""
