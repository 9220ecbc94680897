"""The policy pack directory (PulumiPolicy.yaml, __main__.py); a package only so it ships in the wheel."""
