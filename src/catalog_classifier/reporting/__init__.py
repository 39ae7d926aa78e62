"""What a run produced, told to people: the report's collector, charts and Jinja2 template, the run summary,
the bench page. Imports every library layer below ``stages``; never a stage, the CLI or a flow.
"""
