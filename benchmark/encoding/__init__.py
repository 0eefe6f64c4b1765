"""The codes stage: a trained victim's database and query codes with its diagnostics, and the codes of protected images (`codes`)."""
