"""The hub: joint-meeting alerts and supervision deadlines over the events addressed to it."""
