"""What a run produced, told to people: the report's collector, charts and Jinja2 template, the run summary.
Imports every library layer but ``benchmarks``; never a stage, the CLI or a flow.
"""
