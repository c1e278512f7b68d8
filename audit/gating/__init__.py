"""The regression gate: compare a current audit with a baseline under a policy.

    policy.py    the TOML policy: layers (defaults, roles, datasets), limits, significance
    reading.py   what the gate reads from an audit.json and its predictions artifacts
    decision.py  the rules, paired bootstrap of drops, and `run_gate` -> `GateReport`
    formats.py   the report as a table, Markdown and JUnit XML
    files.py     `gate_files`: run the gate on two files and write its outputs (the CLI's job)
"""
