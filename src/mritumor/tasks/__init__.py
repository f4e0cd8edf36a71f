"""One LightningModule per task (ssl, hierarchical, multitask) and the function that runs it."""
