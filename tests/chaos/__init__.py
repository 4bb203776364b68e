"""The chaos scenario of ``tests/test_chaos.py`` and what it needs: probes that see the
moments worth killing in (``_probes``), the scenario and its check (``scenario``), and a
sink broken on purpose that the check must catch (``broken_sink``)."""
