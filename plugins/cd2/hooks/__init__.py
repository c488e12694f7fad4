"""Airflow hooks of the cd2 package."""
