"""The district simulator (``lianfang simulate``): a pure generator of a district's days
(:mod:`.generator`, with synthetic people from :mod:`.people`) and a thin driver that publishes them
through one SDK client per sender (:mod:`.driver`)."""
