"""
Short test sentences shared by the command line and config tests
"""

SENTENCES = [
    "the retrieval model encodes every query and document into token vectors",
    "search engines rank passages for questions about science",
    "a small index keeps compact vectors on disk",
    "large collections need approximate neighbours",
    "health finance sports music history travel food weather",
    "music history and travel",
    "the model scores them with maximum similarity",
    "questions about food and weather",
    "compact vectors for a large collection of documents",
    "science questions and health questions",
]

QUERIES = ["music and travel", "maximum similarity of token vectors", "questions about science"]
