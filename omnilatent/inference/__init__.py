"""Using a trained model: what a checkpoint says about itself (`card`), loading it
(`trained`), and turning inputs into outputs (`generate`)."""
