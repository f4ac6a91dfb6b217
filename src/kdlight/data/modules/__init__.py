"""The LightningDataModules every dataset builds on: in-memory arrays, and image folders decoded per batch."""
