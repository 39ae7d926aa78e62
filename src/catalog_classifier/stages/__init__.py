"""Pipeline stages: one module per DVC stage, so a stage's DVC dependencies are exactly its own code."""
