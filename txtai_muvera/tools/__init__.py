"""
Tools: the command line, BEIR evaluation and the offline stand-in builder
"""
