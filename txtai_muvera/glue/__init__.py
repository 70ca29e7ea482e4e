"""
Glue: the classes txtai resolves by class path, the registration hook and the txtai pipelines
"""
