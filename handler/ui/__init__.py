"""The trace viewer at /ui: templates and static files served from the package."""
