"""The coordinator console (联席会议协调台): the joint-meeting office's web pages on the bus.

``lianfang serve console`` (:func:`services.console.app.run`) serves it; ``lianfang console adduser``
(:mod:`services.cli.console`) creates accounts; :func:`services.cli.console.demo_login` makes
the demo account that ``lianfang run`` prints.
"""
