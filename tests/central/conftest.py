from tests.central.plugin import *  # noqa: F403 - the fixtures, shared with other test folders
