"""The customer kiosk and till screen: a static web app served by the agent."""
