"""Storage: the content-keyed stage cache and its one cached-stage helper (`cache`), claims (`claims`), the per-cell result store (`results`) and the row schema (`rows`)."""
