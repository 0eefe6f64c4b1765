"""The attack stage: the attack plugin contract (`base`), target labels (`targets`), and preparing, perturbing or releasing the queries (`stage`)."""
