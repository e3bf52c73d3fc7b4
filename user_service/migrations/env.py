from shared.migrations import run_env
from user_service.models import Base

run_env(Base.metadata, version_table="alembic_version_users")
