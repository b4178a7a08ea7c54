"""What the CLI drives on top of the library: the demo (and its step runner), synthetic datasets,
describing a teacher, inspecting data and stores."""
