"""Planning: grid presets expanded into cells (`grid`), each resolved into a plan of plain data with its stage keys (`plan`)."""
