"""Sample export files of the six import formats (synthetic people) and their generator."""
