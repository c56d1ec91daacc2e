"""The diabetes example's training code (a team's own repository would hold this)."""
