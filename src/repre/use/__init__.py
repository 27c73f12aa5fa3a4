"""Using what was learned: pictures of the features (`show`)."""
