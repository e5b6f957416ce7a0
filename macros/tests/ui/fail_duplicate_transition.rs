use stash_macros::lifecycle;

#[lifecycle(name = "Demo", events(Start, Fail))]
pub enum Phase {
    #[initial]
    #[on(Start => Running, Fail => Failed, Start => Failed)]
    Pending,
    #[on(Fail => Failed)]
    Running,
    #[terminal]
    Failed,
}

fn main() {}
