"""What the CLI drives on top of the library: the demo, synthetic datasets, inspecting data
and stores."""
