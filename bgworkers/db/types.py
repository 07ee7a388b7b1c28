"""Column types that differ between MySQL/MariaDB and SQLite: the one place for them."""

from sqlalchemy import BigInteger, DateTime, Integer, String
from sqlalchemy.dialects import mysql

#: BIGINT on MySQL; INTEGER on SQLite so that it is the rowid and auto-increments.
BigId = BigInteger().with_variant(Integer(), "sqlite")
#: Case- and accent-sensitive text (serial numbers compare byte for byte).
BinaryString64 = String(64).with_variant(mysql.VARCHAR(64, collation="utf8mb4_bin"), "mysql")
#: Microsecond timestamps for run history and leases (MySQL DATETIME defaults to seconds).
PreciseDateTime = DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql")
