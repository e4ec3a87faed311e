"""The ground floor: small helpers every other folder may import (atomic file writes, config field declarations)."""
