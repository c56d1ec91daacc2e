"""The model lifecycle: config, data, prepare, train, evaluate, gates, register, events, and the run itself."""
