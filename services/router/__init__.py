"""The router: verify, authorize and deliver every event to exactly the inboxes the policy names."""
