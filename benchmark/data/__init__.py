"""The data stage: image sets (`images`), the retrieval protocol and the Dataset plugin base (`dataset`), the papers' list formats (`lists`)."""
