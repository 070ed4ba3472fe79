"""Foundation: the typed config, errors, paths, vocabulary and on-disk formats every layer shares."""
