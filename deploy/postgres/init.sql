-- Run once by the postgres image on an empty data volume (/docker-entrypoint-initdb.d).
-- One PostgreSQL server, one database per service: a service never reads another's database.
CREATE DATABASE pyairtable_auth;
CREATE DATABASE pyairtable_users;
CREATE DATABASE pyairtable_airtable;
CREATE DATABASE pyairtable_analytics;
