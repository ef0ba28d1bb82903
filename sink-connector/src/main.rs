use std::process::ExitCode;

use clap::Parser;
use sink_connector::config::{Command, Config};
use sink_connector::control::Control;
use sink_connector::redrive::DlqCommand;

#[tokio::main]
async fn main() -> ExitCode {
    // The tests' fault injection (FAILPOINTS=name=action;...): absent from what users run.
    #[cfg(feature = "testing")]
    let _failpoints = fail::FailScenario::setup();
    let config = match Config::parse().validate() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    };
    if let Some(command) = &config.command {
        let result = match command {
            Command::ResetOffsets(args) => {
                sink_connector::replay::reset(&config.kafka, &config.group_id, &config.topic, args)
            }
            Command::DescribeGroup => {
                sink_connector::replay::describe(&config.kafka, &config.group_id, &config.topic)
            }
            Command::Dlq(DlqCommand::List(args)) => {
                let mut out = std::io::stdout().lock();
                sink_connector::redrive::list(&config.kafka, &config.dlq_topic(), args, &mut out)
                    .map(|()| String::new())
            }
            Command::Dlq(DlqCommand::Replay(args)) => sink_connector::redrive::replay(
                &config.kafka,
                &config.dlq_topic(),
                &config.topic,
                &config.group_id,
                args,
            ),
        };
        return match result {
            Ok(table) => {
                print!("{table}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::from(1)
            }
        };
    }
    let (log, http_addr, admin) = (config.log.clone(), config.http_addr, config.admin.clone());
    plumbing::service::run(
        "sink",
        sink_connector::READINESS_CHECKS,
        &log,
        http_addr,
        &admin,
        move |readiness, admin| {
            let control = Control::new(&config, readiness.clone());
            (control.router(admin), (control, config))
        },
        |(control, config), readiness, shutdown| {
            sink_connector::run(config, control, readiness, shutdown)
        },
    )
    .await
}
