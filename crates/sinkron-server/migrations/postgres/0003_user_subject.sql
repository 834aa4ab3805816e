-- A site's user, signed in with the site's own tokens (JWT mode): the token's `sub`. NULL for
-- Sinkron's built-in accounts. Such a user is created the first time its subject is seen,
-- with the username 'jwt:' || subject (no built-in username holds a ':') and no password.
ALTER TABLE users ADD COLUMN subject TEXT;
CREATE UNIQUE INDEX users_subject ON users (subject);
