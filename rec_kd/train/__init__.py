"""Training: the loop (loop.py), the jitted step and its losses, members, sweeps, devices and logs.

Data enters from rec_kd.data, models come from rec_kd.models; a finished run leaves through
rec_kd/experiments (results.json, kept copies) and rec_kd/serve (export).
"""
