"""RepoVault."""
