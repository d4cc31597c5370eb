"""The entropy math (functional), layer rules and profiles."""
