-- `ralph-monitor restore --force`: psql runs this, then pg_restore's SQL, in one transaction
-- (psql --single-transaction), so a failure leaves the database as it was. The schema is
-- emptied here, in that same transaction (pg_restore --clean cannot drop partitioned tables'
-- inherited constraints). psql variable `role` (optional, from --role): the role that will
-- own the restored objects; psql quotes it as an identifier.
\set ON_ERROR_STOP on
\if :{?role}
SET ROLE :"role";
\endif
DROP SCHEMA IF EXISTS public CASCADE;
CREATE SCHEMA public;
ALTER SCHEMA public OWNER TO pg_database_owner;
GRANT USAGE ON SCHEMA public TO PUBLIC;
