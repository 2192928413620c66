//! `tandem token mint`: a token signed with the server's own key (`server-key` in the data
//! directory), offline; the server need not run, and no database is opened.

use super::{CommandError, docs_of};
use crate::accounts::{validate_name, validate_sub};
use crate::auth::{Claims, mint_offline};
use crate::cli::TokenMintArgs;
use tandem_hub::clock::now_s;

/// The token for `args`, valid from now for `--ttl` (at least one second).
pub(super) fn mint(args: &TokenMintArgs) -> Result<String, CommandError> {
    validate_sub(&args.sub).map_err(CommandError::Invalid)?;
    if let Some(name) = &args.name {
        validate_name(name).map_err(CommandError::Invalid)?;
    }
    let now = now_s();
    let claims = Claims {
        sub: args.sub.clone(),
        name: args.name.clone(),
        docs: docs_of(&args.docs)?,
        admin: args.admin,
        exp: now.saturating_add(args.ttl.0.as_secs().max(1)),
        nbf: None,
        iat: Some(now),
        iss: None,
        session: None,
    };
    Ok(mint_offline(&args.data_dir, &claims)?)
}
