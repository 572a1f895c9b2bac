//! The command line: `run`, `check-config` and the admin commands that act on
//! the configured database. Exit status: 0 success, 1 failure (database,
//! refused change), 2 bad usage or configuration.

mod admin;
mod output;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::config::{self, DEFAULT_CONFIG_PATH, Overrides};

/// trunkgate: licence-gated SIP connector between IP-PBX trunks and portals.
#[derive(Debug, Parser)]
#[command(name = "trunkgate", version, about, propagate_version = true)]
pub struct Cli {
    /// Main configuration file.
    #[arg(long, short = 'c', global = true, env = "TRUNKGATE_CONFIG", default_value = DEFAULT_CONFIG_PATH)]
    pub config: PathBuf,
    /// State directory (overrides the file; systemd sets STATE_DIRECTORY).
    #[arg(long, global = true, env = "STATE_DIRECTORY")]
    pub state_dir: Option<PathBuf>,
    /// Database URL (overrides `[database] url`).
    #[arg(long, global = true, env = "TRUNKGATE_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon until SIGTERM or SIGINT.
    Run,
    /// Validate the configuration (and reach the database); print every error.
    CheckConfig,
    /// Manage portals.
    #[command(subcommand)]
    Portal(PortalCmd),
    /// Manage plans and their limits.
    #[command(subcommand)]
    Plan(PlanCmd),
    /// Manage a portal's licence.
    #[command(subcommand)]
    Licence(LicenceCmd),
    /// Manage SIP connector extensions.
    #[command(subcommand)]
    Extension(ExtensionCmd),
    /// Manage portal users.
    #[command(subcommand)]
    User(UserCmd),
    /// Ask the licence rules about a portal.
    #[command(subcommand)]
    Admission(AdmissionCmd),
    /// List call records.
    Cdr(CdrArgs),
    /// List calls in progress across the fleet (their channel leases).
    Calls {
        /// Only this node's calls.
        #[arg(long)]
        node: Option<String>,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// List the channel allowances the nodes of a fleet hold: per portal
    /// and node, the channels the node may admit calls on without asking
    /// the database, and until when unless renewed (PostgreSQL; a single
    /// node counts in memory and holds none).
    Channels {
        /// Only this portal's.
        #[arg(long)]
        portal: Option<String>,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// List the trunks: inbound sources, outbound target, cloud-PBX
    /// registration (which node holds it, registered / registering /
    /// failed with the last answer / waiting) and each node's health view.
    Trunks {
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// An outbound trunk's credentials kept in the database.
    #[command(subcommand)]
    Trunk(TrunkCmd),
}

/// `trunk …`
#[derive(Debug, Subcommand)]
pub enum TrunkCmd {
    /// Store the credentials trunk NAME answers its PBX's challenges with
    /// (for a trunk whose file names none; read at the daemon's start). The
    /// password is read from standard input (first line), never argv.
    SetCredentials {
        /// Trunk name (with a [trunk.outbound] table).
        #[arg(long)]
        trunk: String,
        /// Digest username.
        #[arg(long)]
        username: String,
    },
    /// Remove a trunk's stored credentials.
    ClearCredentials {
        /// Trunk name.
        #[arg(long)]
        trunk: String,
    },
}

/// Licence fields shared by `portal add` and `licence set`.
#[derive(Debug, Clone, Args)]
pub struct LicenceArgs {
    /// Plan: free, demo, or a paid plan name (created with `plan set`).
    #[arg(long, default_value = "free")]
    pub plan: String,
    /// Start of the licence (RFC 3339). Default: in force at once.
    #[arg(long)]
    pub valid_from: Option<String>,
    /// End of the licence (RFC 3339). Required for demo and paid plans.
    #[arg(long)]
    pub valid_until: Option<String>,
    /// What happens when the licence ends (after grace for paid plans).
    #[arg(long, default_value = "block", value_parser = ["block", "downgrade_free"])]
    pub on_expiry: String,
    /// Days a paid licence keeps working after its end (0 to 15).
    #[arg(long, default_value_t = crate::admission::model::DEFAULT_GRACE_DAYS)]
    pub grace_days: u8,
}

/// `portal …`
#[derive(Debug, Subcommand)]
pub enum PortalCmd {
    /// Create a portal with its licence.
    Add {
        /// Immutable portal id.
        #[arg(long)]
        id: String,
        /// Domain name (the SIP realm of its users).
        #[arg(long)]
        domain: String,
        /// The licence.
        #[command(flatten)]
        licence: LicenceArgs,
    },
    /// Show one portal with its licence, extensions and current decision.
    Show {
        /// Portal id.
        id: String,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// List portals.
    List {
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Block a portal: its calls are refused until unblocked.
    Block {
        /// Portal id.
        id: String,
        /// Why.
        #[arg(long, value_parser = ["violation", "inactivity", "incompatible_data", "manual"])]
        reason: String,
    },
    /// Lift a stored block.
    Unblock {
        /// Portal id.
        id: String,
    },
    /// Start deleting a portal (calls refused at once; completes with `purge`).
    Delete {
        /// Portal id.
        id: String,
    },
    /// Complete a deletion: erase credentials and free the domain.
    Purge {
        /// Portal id.
        id: String,
    },
    /// Change a portal's settings.
    Set {
        /// Portal id.
        id: String,
        /// Whether extranet users may be called and register.
        #[arg(long)]
        allow_extranet_calls: Option<bool>,
        /// Restrict the portal's call rate (calls per second), or `none`.
        #[arg(long)]
        max_cps: Option<String>,
        /// Longest call, in seconds.
        #[arg(long)]
        max_call_duration_s: Option<u32>,
    },
}

/// `plan …`
#[derive(Debug, Subcommand)]
pub enum PlanCmd {
    /// Create or change a plan's limits (applies without a restart).
    Set {
        /// Plan name: free, demo or a paid plan.
        name: String,
        /// Largest number of registered users, or `unlimited`.
        #[arg(long)]
        max_users: Option<String>,
        /// Largest call rate (calls per second), or `unlimited`.
        #[arg(long)]
        max_cps: Option<String>,
        /// Channels the plan includes without an extension.
        #[arg(long)]
        included_channels: Option<u32>,
    },
    /// List plans.
    List {
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
}

/// `licence …`
#[derive(Debug, Subcommand)]
pub enum LicenceCmd {
    /// Replace a portal's licence.
    Set {
        /// Portal id.
        #[arg(long)]
        portal: String,
        /// The licence.
        #[command(flatten)]
        licence: LicenceArgs,
    },
}

/// `extension …`
#[derive(Debug, Subcommand)]
pub enum ExtensionCmd {
    /// Add a SIP connector extension (extensions stack).
    Add {
        /// Portal id.
        #[arg(long)]
        portal: String,
        /// Concurrent calls it grants.
        #[arg(long)]
        channels: u32,
        /// Start (RFC 3339, inclusive).
        #[arg(long)]
        valid_from: String,
        /// End (RFC 3339, exclusive).
        #[arg(long)]
        valid_until: String,
    },
    /// List a portal's extensions.
    List {
        /// Portal id.
        #[arg(long)]
        portal: String,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
}

/// `user …`
#[derive(Debug, Subcommand)]
pub enum UserCmd {
    /// Add a user; the password is read from standard input (first line).
    Add {
        /// Portal id.
        #[arg(long)]
        portal: String,
        /// Login.
        #[arg(long)]
        username: String,
        /// A guest of the portal.
        #[arg(long)]
        extranet: bool,
    },
    /// List a portal's users.
    List {
        /// Portal id.
        #[arg(long)]
        portal: String,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Disable a user: no registration, no calls.
    Disable {
        /// Portal id.
        #[arg(long)]
        portal: String,
        /// Login.
        #[arg(long)]
        username: String,
    },
    /// Give a user a static contact (a phone on a fixed address that does
    /// not register), or `none` to remove it.
    SetContact {
        /// Portal id.
        #[arg(long)]
        portal: String,
        /// Login.
        #[arg(long)]
        username: String,
        /// `sip:USER@IP:PORT[;transport=tcp]`, or `none`.
        #[arg(long)]
        contact: String,
    },
    /// What a user may dial out through the portal's trunks, and the
    /// caller number their calls present.
    Set {
        /// Portal id.
        #[arg(long)]
        portal: String,
        /// Login.
        #[arg(long)]
        username: String,
        /// `any`, `none`, or numbers and prefixes ending in `*`, separated
        /// by commas (`+44*,0800*,112`).
        #[arg(long)]
        outbound: Option<String>,
        /// Caller number of the user's outbound calls, or `none` for the
        /// trunk's.
        #[arg(long)]
        outbound_number: Option<String>,
    },
    /// Re-enable a user.
    Enable {
        /// Portal id.
        #[arg(long)]
        portal: String,
        /// Login.
        #[arg(long)]
        username: String,
    },
}

/// `admission …`
#[derive(Debug, Subcommand)]
pub enum AdmissionCmd {
    /// Print the decision the rules give for a call to the portal, and why.
    Explain {
        /// Portal id.
        #[arg(long)]
        portal: String,
        /// Evaluate at this time (RFC 3339) instead of now.
        #[arg(long)]
        at: Option<String>,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
}

/// `cdr`
#[derive(Debug, Args)]
pub struct CdrArgs {
    /// Only this portal.
    #[arg(long)]
    pub portal: Option<String>,
    /// Only records that started at or after this time (RFC 3339).
    #[arg(long)]
    pub since: Option<String>,
    /// Most records to print.
    #[arg(long, default_value_t = 1000)]
    pub limit: u32,
    /// JSON output.
    #[arg(long)]
    pub json: bool,
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let overrides = Overrides { state_dir: cli.state_dir.clone(), database_url: cli.database_url.clone() };
    let loaded = match config::load(&cli.config, &overrides) {
        Ok(l) => l,
        Err(errors) => {
            eprintln!("{errors}");
            eprintln!("{} error(s) in the configuration", errors.0.len());
            return ExitCode::from(2);
        }
    };
    crate::ops::logging::init(loaded.config.log.format, &loaded.config.log.level);
    // One worker thread per SIP core: see `SipConfig::resolved_cores`.
    let workers = loaded.config.sip.resolved_cores();
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(workers).enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Run => crate::daemon::run(loaded).await.map_err(admin::Failure::Runtime),
            other => admin::dispatch(other, &loaded).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(admin::Failure::Usage(msg)) => {
            eprintln!("error: {msg}");
            ExitCode::from(2)
        }
        Err(admin::Failure::Runtime(e)) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
